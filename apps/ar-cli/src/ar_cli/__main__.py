import sys

from ar_cli.main import main

sys.exit(main())

"""ar-text's recipes, one module per registered recipe (imported only when recipes load):

* ``text-code``: :mod:`ar_text.recipes.code`
* ``text-chars``: :mod:`ar_text.recipes.chars`
* ``text-hyperfit``: :mod:`ar_text.recipes.hyperfit`
* ``text-stargraph``: :mod:`ar_text.recipes.stargraph`
* ``text-sequencematch``: :mod:`ar_text.recipes.sequencematch`

``code`` and ``chars`` share their pipeline, :mod:`ar_text.recipes._common`.
"""

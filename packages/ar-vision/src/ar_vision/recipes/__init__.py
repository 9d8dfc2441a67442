"""ar-vision's recipes, one module per registered recipe (imported only when recipes load):

* ``vision-digits``: :mod:`ar_vision.recipes.digits`
* ``vision-images``: :mod:`ar_vision.recipes.images` (your own folder, 16-64 px)
"""

"""ar-decoding's recipes: ``decoding-mtp`` (:mod:`ar_decoding.recipes.mtp`)."""

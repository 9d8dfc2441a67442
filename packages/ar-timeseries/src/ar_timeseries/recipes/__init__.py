"""Recipes of ar-timeseries: ``timeseries-ett`` (:mod:`ar_timeseries.recipes.ett`)."""

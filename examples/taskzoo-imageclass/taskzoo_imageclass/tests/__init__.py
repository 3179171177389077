"""Tests shipped inside the package, so that ``pytest --pyargs taskzoo_imageclass`` runs them."""

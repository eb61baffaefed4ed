"""Scoring labelled data: metrics (numpy only), the evaluation of a served model over
truncations and folds, and the plots (matplotlib, imported only when drawing)."""

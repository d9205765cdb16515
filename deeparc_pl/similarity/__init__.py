"""Layer similarity: linear CKA between every pair of layers (functional core + torchmetrics Metric)."""
from deeparc_pl.similarity.functional import ESTIMATORS, cka_matrix, linear_cka
from deeparc_pl.similarity.metric import CKAMatrix

__all__ = ["ESTIMATORS", "CKAMatrix", "cka_matrix", "linear_cka"]

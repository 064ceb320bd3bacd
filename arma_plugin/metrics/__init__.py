"""Evaluation metrics: segmentation (ISIC 2018, paper Table 2) and video prediction (Moving-MNIST, Table 3)."""

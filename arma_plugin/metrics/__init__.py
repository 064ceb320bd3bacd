"""Evaluation metrics: segmentation (ISIC 2018, paper Table 2) and video prediction (Moving-MNIST, Table 3)."""
from .segmentation import SEGMENTATION_METRICS, confusion_counts, segmentation_scores
from .video import frame_psnr, frame_ssim, summarize_video_metrics, video_prediction_metrics

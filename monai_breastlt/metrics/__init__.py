from __future__ import annotations

from .long_tail import REPORT_SCALARS, LongTailMetric, confusion_matrix, long_tail_report, report_from_confusion

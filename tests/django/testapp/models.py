from __future__ import annotations

from django.db import models


class PidReport(models.Model):
    """Stands in for the AIFlow tracking API's P&ID verification report."""

    name = models.CharField(max_length=100)
    issue_count = models.IntegerField(default=0)
    confidence = models.FloatField(null=True)
    processing_time = models.FloatField(default=0.0)
    status = models.CharField(max_length=20, default="done")

    class Meta:
        app_label = "testapp"

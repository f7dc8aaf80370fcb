"""tim-recall: a paced worker that recalls mistaken Tencent Cloud Chat pushes."""

__version__ = "0.1.0"

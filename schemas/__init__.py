"""Wire formats of tim-recall: the recall request, the API's answer, dead letters and results."""

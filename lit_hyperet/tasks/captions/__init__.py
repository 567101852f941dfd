"""Caption data and retrieval metrics: image–text recall (``retrieval``)."""

"""TextEncoder: the study's text pipeline and the text model, served over gRPC."""

"""The server process: flags, wiring, ServerCore and the gRPC and HTTP/REST front ends (TF
Serving's ``tensorflow_serving/model_servers/``)."""

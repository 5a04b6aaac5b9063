"""The node agent (runs on nodes, stdlib only) and the controller's client for it."""

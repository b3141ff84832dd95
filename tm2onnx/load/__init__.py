"""Loading a .tm safely: the unpickling policy, the graph checks after loading, and the load
itself (`load_traced`)."""

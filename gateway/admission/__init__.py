"""Whether a request may have a stream: the endpoint (``endpoint``), the session it waits for (``waiting``),
the limits and shares every admitted request counts against (``registry``), the client address it counts
for (``client_address``), and the open streams with their clock and drain (``clock``).
"""

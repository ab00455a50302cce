"""Whether a request may have a stream: who is asking, a ticket or a token (``authentication``), the endpoint
(``endpoint``), the session it waits for (``waiting``), the limits and shares every admitted request counts
against (``registry``), the client address it counts for (``client_address``), and the open streams with
their clock and drain (``clock``); and the route that issues stream tickets (``ticket_endpoint``).
"""

"""Whether a request may have a stream: authentication, the tenant rule, limits and waiting
(``endpoint``); the count of every admitted request and open stream (``registry``).
"""

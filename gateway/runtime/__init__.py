"""The running gateway: composition root and health policy (``app``), the server and its workers
(``server``, ``workers``), the garbage-collector policy (``heap``), logging (``logging_setup``) and the API
docs page (``api_docs``).
"""

"""The running gateway: the composition root (``app``), what each port serves (``ports``), the health
policy (``health``), the background loops (``loops``), the
garbage-collector policy (``heap``), the server and its workers (``server``,
``workers``), logging (``logging_setup``, ``redaction``) and the API docs (``api_docs``). See docs/architecture.md.
"""

"""Tailing the topics into the store and the hub, one concept per module: the Kafka client and where it
reads (``connection``), the consume loop with its recovery from unreadable batches (``loop``), applying
one batch (``batch``), the broker probe (``probe``) and store eviction (``eviction``).
``consumers.consumer.SessionStatusConsumer`` puts them together and names the tasks to supervise.
"""

"""Store and forward: the durable outbox, the MQTT link to the hospital and the wire protocol both ends
share (topics, acknowledgements)."""

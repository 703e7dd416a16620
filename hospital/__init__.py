"""The hospital side of medge: what runs next to the broker, the database and the PACS.

It may import `edge` (the finding schema, the topic scheme); `edge` never imports it, and a device
needs none of its dependencies.
"""

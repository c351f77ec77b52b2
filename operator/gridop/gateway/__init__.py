"""The console gateway: websocket interact/tail on session consoles, authorized per user and tenant."""

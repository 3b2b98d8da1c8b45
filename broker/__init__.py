"""Broker tooling: accounts and password hashes, ACLs, the local CA, mosquitto.conf rendering."""

"""The reference checker: replays the events one object at a time and names every violation
(README.md here, every rule)."""

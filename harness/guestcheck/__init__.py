"""The guest's own health, apart from the bitmap checker (harness/checks/): its kernel log's reports
(health.py), its task dumps (sysrq.py), and whether its vCPUs make progress (livelock.py). Pure: each judges
text and counters the lanes fetched."""

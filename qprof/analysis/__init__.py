"""The analysis half: any trace -> one activity table -> attribution -> diagnosis -> report (no runtime, no capture)."""

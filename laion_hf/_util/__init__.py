"""Private helpers shared by the stages (output folders, atomic writes)."""

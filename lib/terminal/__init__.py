"""What people see on a terminal: streamed text, token boxes, stats lines, tables and panels."""

"""Hostile: allocates until the memory limit stops it, while it is loaded."""
hoard = []
while True:
    hoard.append(bytearray(1 << 20))

// Placeholder: the workload program is filled in by its own change.
print("memhaul-workload: not built yet")

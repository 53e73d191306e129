// Intentionally empty: the target only provides ReceiverFuzz_main (see ReceiverFuzzMain.c).

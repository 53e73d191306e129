// Intentionally empty: the target only provides WireFuzz_main (see WireFuzzMain.c).

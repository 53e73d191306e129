// SwiftPM links executables with `--defsym main=<Module>_main` (its testable-executable
// entry-point renaming), so libFuzzer's own main() is never used. Provide that symbol and
// hand control to libFuzzer's driver with the Swift callback.
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int WireFuzz_main(int argc, char **argv) {
    return LLVMFuzzerRunDriver(&argc, &argv, LLVMFuzzerTestOneInput);
}

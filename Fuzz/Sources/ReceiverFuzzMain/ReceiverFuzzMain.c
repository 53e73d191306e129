// SwiftPM links executables with `--defsym main=<Module>_main`, so libFuzzer's own main() is
// never used (see WireFuzzMain.c). `ReceiverFuzz --generate-seeds DIR` writes the seed corpus
// instead of fuzzing (the generator lives in the Swift harness, next to the input format).
#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int ReceiverFuzzGenerateSeeds(const char *directory);

int ReceiverFuzz_main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--generate-seeds") == 0) return ReceiverFuzzGenerateSeeds(argv[2]);
    return LLVMFuzzerRunDriver(&argc, &argv, LLVMFuzzerTestOneInput);
}

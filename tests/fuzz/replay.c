/*
 * Replays fuzz inputs through LLVMFuzzerTestOneInput without libFuzzer, so
 * that the committed corpus runs as a regression test with any compiler
 * (and under `make SANITIZE=1 test` with ASan and UBSan).
 *
 *   fuzz_config_replay DIR_OR_FILE...
 *
 * Exits 1 if an argument cannot be read or holds no input at all; a crash
 * or a sanitizer report fails the test by itself.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return -1;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *b = realloc(buf, cap);
            if (b == NULL) {
                free(buf);
                fclose(f);
                return -1;
            }
            buf = b;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, len);
    free(buf);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    size_t inputs = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (replay_file(argv[i]) != 0)
                return 1;
            inputs++;
            continue;
        }
        struct dirent **names = NULL;
        int n = scandir(argv[i], &names, NULL, NULL);
        if (n < 0) {
            perror(argv[i]);
            return 1;
        }
        char **paths = calloc((size_t)n + 1, sizeof(*paths));
        size_t count = 0;
        for (int j = 0; j < n; j++) {
            if (names[j]->d_name[0] != '.' && paths != NULL &&
                asprintf(&paths[count], "%s/%s", argv[i], names[j]->d_name) >= 0)
                count++;
            free(names[j]);
        }
        free(names);
        if (paths == NULL)
            return 1;
        qsort(paths, count, sizeof(*paths), by_name);
        int rc = 0;
        for (size_t j = 0; j < count; j++) {
            if (rc == 0 && replay_file(paths[j]) != 0)
                rc = 1;
            free(paths[j]);
        }
        free(paths);
        if (rc != 0)
            return 1;
        inputs += count;
    }
    printf("replayed %zu inputs\n", inputs);
    return inputs > 0 ? 0 : 1;
}

/* Unit tests for strutil: prints one line per check and exits 1 on failure. */
#include <stdio.h>
#include <string.h>

#include "../src/strutil.h"

static int failures = 0;
static int checks = 0;

#define CHECK(name, cond)                                   \
    do {                                                    \
        checks++;                                           \
        if (cond) {                                         \
            printf("ok   %s\n", name);                      \
        } else {                                            \
            printf("FAIL %s (%s:%d)\n", name, __FILE__, __LINE__); \
            failures++;                                     \
        }                                                   \
    } while (0)

int main(void) {
    char buf[64];

    strcpy(buf, "abc");
    CHECK("reverse odd length", strcmp(str_reverse(buf), "cba") == 0);
    strcpy(buf, "abcd");
    CHECK("reverse even length", strcmp(str_reverse(buf), "dcba") == 0);
    strcpy(buf, "");
    CHECK("reverse empty", strcmp(str_reverse(buf), "") == 0);

    strcpy(buf, "Hello, World 42");
    CHECK("upper", strcmp(str_upper(buf), "HELLO, WORLD 42") == 0);

    CHECK("word count", str_word_count("  the quick\tbrown\nfox ") == 4);
    CHECK("word count empty", str_word_count("") == 0);

    CHECK("palindrome", str_is_palindrome("A man, a plan, a canal: Panama"));
    CHECK("not palindrome", !str_is_palindrome("buildfleet"));

    printf("%d checks, %d failures\n", checks, failures);
    if (failures == 0) printf("ALL TESTS PASSED\n");
    return failures == 0 ? 0 : 1;
}

/* hello: prints a greeting and a few facts about its arguments. */
#include <stdio.h>
#include <string.h>

#include "strutil.h"

int main(int argc, char **argv) {
    const char *who = argc > 1 ? argv[1] : "buildfleet";
    char buf[256];
    snprintf(buf, sizeof buf, "%s", who);

    printf("Hello, %s!\n", who);
    printf("words: %zu\n", str_word_count(who));
    printf("upper: %s\n", str_upper(buf));
    snprintf(buf, sizeof buf, "%s", who);
    printf("reversed: %s\n", str_reverse(buf));
    printf("palindrome: %s\n", str_is_palindrome(who) ? "yes" : "no");
    return 0;
}

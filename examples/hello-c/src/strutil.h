/* Small string utilities: the library the example builds and tests. */
#ifndef STRUTIL_H
#define STRUTIL_H

#include <stddef.h>

/* Reverses s in place; returns s. */
char *str_reverse(char *s);

/* Upper-cases ASCII letters of s in place; returns s. */
char *str_upper(char *s);

/* Number of whitespace-separated words in s. */
size_t str_word_count(const char *s);

/* 1 when s reads the same backwards, ignoring case and non-alphanumerics. */
int str_is_palindrome(const char *s);

#endif

#include "rpn.h"

#include <stdlib.h>
#include <string.h>

#define STACK_MAX 64

enum rpn_status rpn_eval(const char *expr, double *result) {
    double stack[STACK_MAX];
    int depth = 0;
    const char *p = expr;
    while (*p) {
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) break;
        const char *end = p;
        while (*end && *end != ' ' && *end != '\t') end++;
        size_t len = (size_t)(end - p);
        if (len == 1 && strchr("+-*/", *p)) {
            if (depth < 2) return RPN_UNDERFLOW;
            double b = stack[--depth];
            double a = stack[--depth];
            double v;
            switch (*p) {
            case '+': v = a + b; break;
            case '-': v = a - b; break;
            case '*': v = a * b; break;
            default:
                if (b == 0) return RPN_DIV_ZERO;
                v = a / b;
            }
            stack[depth++] = v;
        } else {
            char buf[64];
            if (len >= sizeof buf) return RPN_BAD_TOKEN;
            memcpy(buf, p, len);
            buf[len] = '\0';
            char *stop;
            double v = strtod(buf, &stop);
            if (*stop != '\0') return RPN_BAD_TOKEN;
            if (depth == STACK_MAX) return RPN_OVERFLOW;
            stack[depth++] = v;
        }
        p = end;
    }
    if (depth == 0) return RPN_EMPTY;
    if (depth > 1) return RPN_LEFTOVER;
    *result = stack[0];
    return RPN_OK;
}

const char *rpn_strerror(enum rpn_status status) {
    switch (status) {
    case RPN_OK: return "ok";
    case RPN_UNDERFLOW: return "stack underflow";
    case RPN_OVERFLOW: return "stack overflow";
    case RPN_BAD_TOKEN: return "not a number or operator";
    case RPN_DIV_ZERO: return "division by zero";
    case RPN_LEFTOVER: return "values left on the stack";
    case RPN_EMPTY: return "empty expression";
    }
    return "unknown error";
}

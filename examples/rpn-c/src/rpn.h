#ifndef RPN_H
#define RPN_H

/* Outcome of evaluating an expression. */
enum rpn_status { RPN_OK = 0, RPN_UNDERFLOW, RPN_OVERFLOW, RPN_BAD_TOKEN, RPN_DIV_ZERO, RPN_LEFTOVER, RPN_EMPTY };

/*
 * Evaluates a reverse-Polish expression of numbers and + - * / separated by
 * spaces ("3 4 + 2 *" is 14). On RPN_OK, *result holds the value.
 */
enum rpn_status rpn_eval(const char *expr, double *result);

/* A message for a status, e.g. "stack underflow". */
const char *rpn_strerror(enum rpn_status status);

#endif

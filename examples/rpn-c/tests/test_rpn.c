#include <math.h>
#include <stdio.h>

#include "rpn.h"

static int checks, failures;

static void expect_value(const char *expr, double want) {
    double got = 0;
    enum rpn_status s = rpn_eval(expr, &got);
    checks++;
    if (s != RPN_OK || fabs(got - want) > 1e-9) {
        failures++;
        printf("FAIL %s: got %g (%s), want %g\n", expr, got, rpn_strerror(s), want);
    }
}

static void expect_status(const char *expr, enum rpn_status want) {
    double got = 0;
    enum rpn_status s = rpn_eval(expr, &got);
    checks++;
    if (s != want) {
        failures++;
        printf("FAIL %s: status %s, want %s\n", expr, rpn_strerror(s), rpn_strerror(want));
    }
}

int main(void) {
    expect_value("3 4 +", 7);
    expect_value("3 4 + 2 *", 14);
    expect_value("10 4 -", 6);
    expect_value("1 2 /", 0.5);
    expect_value("  2.5   4 * ", 10);
    expect_value("-3 2 *", -6);
    expect_status("+", RPN_UNDERFLOW);
    expect_status("1 0 /", RPN_DIV_ZERO);
    expect_status("1 2", RPN_LEFTOVER);
    expect_status("1 x +", RPN_BAD_TOKEN);
    expect_status("", RPN_EMPTY);
    printf("%d checks, %d failures\n", checks, failures);
    if (failures == 0) printf("RPN TESTS PASSED\n");
    return failures == 0 ? 0 : 1;
}

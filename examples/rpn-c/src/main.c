#include <stdio.h>

#include "rpn.h"

/* rpn '3 4 + 2 *' prints 14. */
int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s 'EXPRESSION'\n", argv[0]);
        return 2;
    }
    double v;
    enum rpn_status s = rpn_eval(argv[1], &v);
    if (s != RPN_OK) {
        fprintf(stderr, "rpn: %s\n", rpn_strerror(s));
        return 1;
    }
    printf("%g\n", v);
    return 0;
}

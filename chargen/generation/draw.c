/* Choosing tokens from logits, row by row, in double precision: the engine's last steps of a
 * sampling step in three calls instead of a dozen small torch operations (chargen/generation/
 * sampling.py says what each computes; torch's operators do the same where this is not built).
 *
 * Rows are ``stride`` floats apart (a row of V logits may sit in a wider buffer). Every row is
 * computed alone, in one fixed order, so a row's result does not depend on the rows beside it.
 */
#include <math.h>
#include <stdint.h>

/* out[r] = log(sum over v of exp(logits[r][v])), as torch's logsumexp gives it: minus infinity
 * for a row of minus infinities, infinity for a row with an infinity, NaN for a row with a NaN. */
void log_normalisers(int rows, int V, int64_t stride, const float *logits, double *out)
{
    for (int r = 0; r < rows; r++) {
        const float *row = logits + (int64_t)r * stride;
        double most = -INFINITY, sum = 0.0;
        int nan = 0;
        for (int v = 0; v < V; v++) {
            nan |= isnan(row[v]);
            if (row[v] > most)
                most = row[v];
        }
        if (nan || isinf(most)) {
            out[r] = nan ? NAN : most;
            continue;
        }
        for (int v = 0; v < V; v++)
            sum += exp((double)row[v] - most);
        out[r] = most + log(sum);
    }
}

/* tokens[r]: the first v whose cumulative probability under softmax(scaled[r]) exceeds
 * uniform[r] times the total (inverse transform sampling; a token of probability zero is never
 * chosen), V - 1 where none does (a row without a finite logit). ``work`` holds V doubles. */
void draw(int rows, int V, int64_t stride, const float *scaled, const double *uniform,
          double *work, int64_t *tokens)
{
    for (int r = 0; r < rows; r++) {
        const float *row = scaled + (int64_t)r * stride;
        double most = -INFINITY, total = 0.0;
        int64_t token = V - 1;
        for (int v = 0; v < V; v++)
            if (row[v] > most)
                most = row[v];
        if (most > -INFINITY) {
            for (int v = 0; v < V; v++) {
                total += exp((double)row[v] - most);
                work[v] = total;
            }
            const double target = uniform[r] * total;
            for (int v = 0; v < V; v++)
                if (work[v] > target) {
                    token = v;
                    break;
                }
        }
        tokens[r] = token;
    }
}

/* out[r] = logits[r][tokens[r]] - normalisers[r]: each chosen token's log-probability. Every
 * token must be below the row's length: the draws and argmax give no other. */
void picked(int rows, int64_t stride, const float *logits, const int64_t *tokens,
            const double *normalisers, double *out)
{
    for (int r = 0; r < rows; r++)
        out[r] = (double)logits[(int64_t)r * stride + tokens[r]] - normalisers[r];
}

/* tally/client.h as a C11 program: the whole API used once, without an agent (every call a no-op). */
#include <stdio.h>

#include "tally/client.h"

int main(void) {
  tally_client *client = tally_open("c-check");
  const tally_label labels[] = {{"tenant", "acme"}, {"model", "llama"}};
  const uint32_t handle = tally_intern(client, labels, 2);
  const tally_counter widgets = tally_register_counter(client, "widgets");
  tally_request request = {.tokens_in = 10, .tokens_out = 20, .ttft_ns = 1000, .duration_ns = 5000};
  tally_add(client, handle, TALLY_TOKENS_IN, 10);
  tally_add(client, handle, widgets, 1);
  tally_set(client, handle, TALLY_CONTEXT_TOKENS, 4096);
  tally_record(client, handle, &request);
  const tally_admission admission = tally_admit(client, handle);
  const int reserved = tally_reserve(client, handle, TALLY_TOKENS_OUT, 100);
  tally_commit(client, handle, TALLY_TOKENS_OUT, 100, 20);
  const int ok = handle != 0 && widgets != TALLY_COUNTER_INVALID && admission.decision == TALLY_ALLOW &&
                 TALLY_REASON_CODE(admission.reason) == TALLY_REASON_NO_AGENT &&
                 TALLY_DEGRADE_MAX_TOKENS(admission.reason) == 0 && reserved == 1 && tally_attached(client) == 0;
  tally_close(client);
  if (!ok) {
    fprintf(stderr, "unexpected result\n");
    return 1;
  }
  return 0;
}

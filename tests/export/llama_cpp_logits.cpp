// Probe for tests/export/test_gguf_llama_cpp.py: how llama.cpp itself reads a GGUF that tuner wrote.
//   llama_cpp_logits MODEL.gguf PROMPT_FILE N_CTX ID...
// prints "TOKENS id..." (llama.cpp's tokenization of the prompt file, special tokens parsed, nothing
// added), then one "LOGITS v..." line per given id: the logits after a single decode of all the ids.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void silent(enum ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL PROMPT_FILE N_CTX ID...\n", argv[0]);
        return 2;
    }
    llama_log_set(silent, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (model == nullptr) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);

    std::ifstream file(argv[2], std::ios::binary);
    std::stringstream text;
    text << file.rdbuf();
    const std::string prompt = text.str();
    std::vector<llama_token> pieces(prompt.size() + 8);
    const int n_pieces = llama_tokenize(vocab, prompt.data(), (int32_t) prompt.size(), pieces.data(),
                                        (int32_t) pieces.size(), false, true);
    printf("TOKENS");
    for (int i = 0; i < n_pieces; i++) {
        printf(" %d", pieces[i]);
    }
    printf("\n");

    std::vector<llama_token> ids;
    for (int i = 4; i < argc; i++) {
        ids.push_back(atoi(argv[i]));
    }
    llama_context_params params = llama_context_default_params();
    params.n_ctx = (uint32_t) atoi(argv[3]);
    params.n_batch = params.n_ubatch = (uint32_t) ids.size();
    params.n_threads = params.n_threads_batch = 1;
    llama_context * ctx = llama_init_from_model(model, params);
    llama_batch batch = llama_batch_init((int32_t) ids.size(), 0, 1);
    batch.n_tokens = (int32_t) ids.size();
    for (size_t i = 0; i < ids.size(); i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = (llama_pos) i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(vocab);
    for (size_t i = 0; i < ids.size(); i++) {
        const float * logits = llama_get_logits_ith(ctx, (int32_t) i);
        printf("LOGITS");
        for (int v = 0; v < n_vocab; v++) {
            printf(" %.7g", logits[v]);
        }
        printf("\n");
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}

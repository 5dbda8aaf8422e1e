/* test_sd_weights.c - the LDM -> diffusers renaming of single-file SD 1.x
 * checkpoints (engine/sd/weights.c sdw_ldm_name), name by name for SD 1.5's
 * layout (layers_per_block 2, four decoder levels), including the names
 * diffusers' conversion drops. The whole mapping is compared with
 * diffusers' own conversion, tensor by tensor, in tests/test_sd_load.sh. */
#include <string.h>

#include "sd/weights.h"
#include "t.h"

static void test_names(void) {
    static const struct {
        sd_part part;
        const char *ldm, *want; /* want NULL: not converted */
        int squeeze;
    } c[] = {
        {SD_UNET, "time_embed.0.weight", "time_embedding.linear_1.weight", 0},
        {SD_UNET, "time_embed.2.bias", "time_embedding.linear_2.bias", 0},
        {SD_UNET, "input_blocks.0.0.weight", "conv_in.weight", 0},
        {SD_UNET, "input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight", 0},
        {SD_UNET, "input_blocks.2.0.in_layers.2.bias", "down_blocks.0.resnets.1.conv1.bias", 0},
        {SD_UNET, "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
         "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight", 0},
        {SD_UNET, "input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight", 0},
        {SD_UNET, "input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight", 0},
        {SD_UNET, "input_blocks.11.0.emb_layers.1.weight", "down_blocks.3.resnets.1.time_emb_proj.weight", 0},
        {SD_UNET, "middle_block.0.out_layers.3.weight", "mid_block.resnets.0.conv2.weight", 0},
        {SD_UNET, "middle_block.1.proj_in.weight", "mid_block.attentions.0.proj_in.weight", 0},
        {SD_UNET, "middle_block.2.out_layers.0.bias", "mid_block.resnets.1.norm2.bias", 0},
        {SD_UNET, "output_blocks.0.0.skip_connection.bias", "up_blocks.0.resnets.0.conv_shortcut.bias", 0},
        {SD_UNET, "output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight", 0},
        {SD_UNET, "output_blocks.5.1.norm.weight", "up_blocks.1.attentions.2.norm.weight", 0},
        {SD_UNET, "output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias", 0},
        {SD_UNET, "output_blocks.11.1.proj_out.weight", "up_blocks.3.attentions.2.proj_out.weight", 0},
        {SD_UNET, "out.0.weight", "conv_norm_out.weight", 0},
        {SD_UNET, "out.2.bias", "conv_out.bias", 0},
        {SD_UNET, "label_emb.0.0.weight", NULL, 0},
        {SD_UNET, "input_blocks.x.0.weight", NULL, 0},
        {SD_VAE, "decoder.up.3.block.0.conv1.weight", "decoder.up_blocks.0.resnets.0.conv1.weight", 0},
        {SD_VAE, "decoder.up.0.block.2.nin_shortcut.bias", "decoder.up_blocks.3.resnets.2.conv_shortcut.bias", 0},
        {SD_VAE, "decoder.up.1.upsample.conv.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight", 0},
        {SD_VAE, "encoder.down.2.downsample.conv.bias", "encoder.down_blocks.2.downsamplers.0.conv.bias", 0},
        {SD_VAE, "decoder.mid.block_2.norm1.weight", "decoder.mid_block.resnets.1.norm1.weight", 0},
        {SD_VAE, "decoder.mid.attn_1.norm.bias", "decoder.mid_block.attentions.0.group_norm.bias", 0},
        {SD_VAE, "decoder.mid.attn_1.q.weight", "decoder.mid_block.attentions.0.to_q.weight", 1},
        {SD_VAE, "decoder.mid.attn_1.proj_out.weight", "decoder.mid_block.attentions.0.to_out.0.weight", 1},
        {SD_VAE, "decoder.norm_out.weight", "decoder.conv_norm_out.weight", 0},
        {SD_VAE, "post_quant_conv.weight", "post_quant_conv.weight", 0},
        {SD_VAE, "loss.discriminator.main.0.weight", NULL, 0},
        {SD_TEXT_ENCODER, "text_model.final_layer_norm.weight", "text_model.final_layer_norm.weight", 0},
        {SD_TEXT_ENCODER, "embeddings.token_embedding.weight", "text_model.embeddings.token_embedding.weight", 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        char out[SD_NAME_MAX] = "";
        int sq = -1, ok = sdw_ldm_name(c[i].part, c[i].ldm, 2, 4, out, sizeof out, &sq);
        if (!c[i].want) {
            CHECK(!ok, "%s: converted to %s, diffusers drops it", c[i].ldm, out);
            continue;
        }
        CHECK(ok && !strcmp(out, c[i].want) && sq == c[i].squeeze, "%s -> '%s' (squeeze %d), expected %s (%d)",
              c[i].ldm, ok ? out : "(none)", sq, c[i].want, c[i].squeeze);
    }
    char tiny[8];
    int sq;
    CHECK(!sdw_ldm_name(SD_UNET, "input_blocks.1.0.in_layers.0.weight", 2, 4, tiny, sizeof tiny, &sq),
          "a name longer than the buffer converted");
}

int main(void) {
    RUN(test_names);
    return t_done();
}

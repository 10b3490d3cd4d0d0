# The configs benchmarks/gpu_fast_recipe.sh ran for the README (sourced): four calls on the H200 (the first
# config of each is timed alone; CALL4's first three) and CPU, run on the 2-core CPU. R: the fast recipe without
# its size and length (float32: the default when they ran; a later config's own train.mixed_precision wins);
# W16...W48: widths.
R="train.mixed_precision=none;train.network=resnet;train.dropout=[0,0,0,0];train.activation=relu;train.weight_decay=5e-4;train.label_smoothing=0.2;train.rotation_deg=0;train.shift=0.125;train.fill_mode=reflect;train.whole_pixel_shift=true;train.optimizer=sgd;train.lr_schedule=linear;train.batch_size=256;train.lr_decay=0;evaluate.flip_tta=true"
W16=train.widths=[16,32,64,128]
W24=train.widths=[24,48,96,192]
W32=train.widths=[32,64,128,256]
CALL1=(  # these two finished; the call's 9 other configs ran out of GPU memory (JAX took 75% up front), CALL2 reran most
 "f16d2e30:$R;$W16;train.block_depth=2;train.epochs=30;train.lr_boundaries=[6];train.lr_values=[0.2,0.0]"
 "tutbf16s1:train.epochs=20;seed=1;train.mixed_precision=bfloat16"
)
CALL2=(
 "f16d2e10:$R;$W16;train.block_depth=2;train.epochs=10;train.lr_boundaries=[2];train.lr_values=[0.2,0.0]"
 "f16d2e30lr1:$R;$W16;train.block_depth=2;train.epochs=30;train.lr_boundaries=[6];train.lr_values=[0.1,0.0]"
 "f16d3e30:$R;$W16;train.block_depth=3;train.epochs=30;train.lr_boundaries=[6];train.lr_values=[0.2,0.0]"
 "f16d3e60:$R;$W16;train.block_depth=3;train.epochs=60;train.lr_boundaries=[12];train.lr_values=[0.2,0.0]"
 "f16d2e60:$R;$W16;train.block_depth=2;train.epochs=60;train.lr_boundaries=[12];train.lr_values=[0.2,0.0]"
 "f24d2e30:$R;$W24;train.block_depth=2;train.epochs=30;train.lr_boundaries=[6];train.lr_values=[0.2,0.0]"
 "f24d2e15:$R;$W24;train.block_depth=2;train.epochs=15;train.lr_boundaries=[3];train.lr_values=[0.2,0.0]"
 "f32d2e15:$R;$W32;train.block_depth=2;train.epochs=15;train.lr_boundaries=[3];train.lr_values=[0.2,0.0]"
 "tutf32s1:train.epochs=20;seed=1;train.mixed_precision=none"
 "tutf32s2:train.epochs=20;seed=2;train.mixed_precision=none"
 "tutbf16s2:train.epochs=20;seed=2;train.mixed_precision=bfloat16"
)
W48=train.widths=[48,96,192,384]
CALL3=(
 "f32d2e30:$R;$W32;train.block_depth=2;train.epochs=30;train.lr_boundaries=[6];train.lr_values=[0.2,0.0]"
 "f32d3e30:$R;$W32;train.block_depth=3;train.epochs=30;train.lr_boundaries=[6];train.lr_values=[0.2,0.0]"
 "f24d3e30:$R;$W24;train.block_depth=3;train.epochs=30;train.lr_boundaries=[6];train.lr_values=[0.2,0.0]"
 "f24d2e50:$R;$W24;train.block_depth=2;train.epochs=50;train.lr_boundaries=[10];train.lr_values=[0.2,0.0]"
 "f48d2e20:$R;$W48;train.block_depth=2;train.epochs=20;train.lr_boundaries=[4];train.lr_values=[0.2,0.0]"
 "f32d2e30bf16:$R;$W32;train.block_depth=2;train.epochs=30;train.lr_boundaries=[6];train.lr_values=[0.2,0.0];train.mixed_precision=bfloat16"
)
CPU=(  # on the 2-core CPU (KERAS_BACKEND=tensorflow), the small network's 10 epochs
 "f16d2e10:$R;$W16;train.block_depth=2;train.epochs=10;train.lr_boundaries=[2];train.lr_values=[0.2,0.0]"
)
# CALL4 (SOLO=3): the tutorial recipe's 125 epochs and both recipes exactly as recipes/ writes them, each alone on
# the same H200 (the same-card times of issue 9, item 3), then more seeds of `make fast` side by side.
recipe() {  # a recipe's overrides as one CONFIG; fails loudly rather than run the tutorial recipe under its name
    local file
    file="$(dirname "${BASH_SOURCE[0]}")/../recipes/$1.overrides"
    [[ -f $file ]] || { echo "no $file" >&2; return 1; }
    grep -Ev '^[[:space:]]*(#|$)' "$file" | paste -sd';' -
}
CALL4=(
 "tut125f32:train.mixed_precision=none"
 "fastsmallf32:$(recipe fast-small);train.mixed_precision=none"
 "fastf32:$(recipe fast);train.mixed_precision=none"
 "fastf32s2:$(recipe fast);train.mixed_precision=none;seed=2"
 "fastf32s3:$(recipe fast);train.mixed_precision=none;seed=3"
 "fastauto:$(recipe fast)"
)

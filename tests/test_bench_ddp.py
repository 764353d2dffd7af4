"""Two CPU processes (gloo) split the benchmark images without padding: the same counts as one process."""
import datetime
import json
import os

import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2


def _data(root):
    from bench_fixtures import WNIDS, write_video, write_wnid_folder
    # 5 images (not a multiple of 2): a padding sampler would count one twice.
    write_wnid_folder(os.path.join(root, 'val'), [(2, 2), (3, 3), (4, 4), (4, 5), (6, 6)])
    # 3 videos of one temporal and one noise perturbation.
    for p in ('translate', 'gaussian_noise'):
        write_video(os.path.join(root, 'p', p, WNIDS[5], 'a.mp4'), [5, 6, 5, 7])
        write_video(os.path.join(root, 'p', p, WNIDS[5], 'b.mp4'), [5, 5, 5, 5])
        write_video(os.path.join(root, 'p', p, WNIDS[9], 'c.mp4'), [9, 8, 8, 9])


def _bench(root, output):
    import bench_fixtures  # noqa: F401  (registers the test model)
    from timm_rspc.bench import run_benchmark
    return run_benchmark('bench_test_mean_pixel', output, imagenet=os.path.join(root, 'val'),
                         imagenet_p=os.path.join(root, 'p'), allow_partial=True, workers=0, progress=False,
                         plot=False, verbose=False)


def worker(rank, root):
    dist.init_process_group('gloo', init_method=f'file://{root}/init', rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=120))   # a stuck rank fails the test, never hangs it
    try:
        _bench(root, os.path.join(root, 'two'))
    finally:
        dist.destroy_process_group()


def test_two_processes_count_every_image_once(tmp_path):
    root = str(tmp_path)
    _data(root)
    one = _bench(root, os.path.join(root, 'one'))
    # Rank 1 is spawned (a fork of this process, whose OpenMP pool and locks earlier tests used, can hang in its first
    # parallel torch op), rank 0 is this process.
    other = mp.get_context('spawn').Process(target=worker, args=(1, root))
    other.start()
    try:
        worker(0, root)
        other.join(timeout=120)
    finally:
        if other.is_alive():
            other.kill()
    assert other.exitcode == 0
    with open(os.path.join(root, 'two', 'results.json')) as f:
        two = json.load(f)
    assert two['run']['world_size'] == 2
    assert two['splits']['imagenet/all'] == {'correct': 4, 'total': 5} == one['splits']['imagenet/all']
    assert two['splits'] == json.loads(json.dumps(one['splits']))
    assert two['summary'] == json.loads(json.dumps(one['summary']))
    assert one['splits']['imagenet_p/translate']['videos'] == 3

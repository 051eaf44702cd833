"""The module's self-test, run inside Slicer: "Reload & Test" in the module panel (through
``ACTIONPlusPlus.runTest``) and the extension's CTest (``Testing/Python/CMakeLists.txt``).

Always, torch or not: the panel's path with a stub worker (ticked volumes -> a predict job written one
volume per step -> the stub's event stream -> prediction nodes loaded one per step, updated in place
the second time).  With torch and psutil: phantom volumes and segmentations in the scene, a quick CPU
training through the real worker, predictions checked for names, geometry and a Dice above chance; bad
input leaves nodes untouched.  Without them it says so and runs only the first part (the tests never
install packages).
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from ACTIONPlusPlus import ACTIONPlusPlusLogic  # also puts ACTIONPlusPlusLib on sys.path
from ACTIONPlusPlusLib.slicer_bridge import blocking_run, module_jobs, node_selection
from ACTIONPlusPlusLib.slicer_bridge.panel import job_options, run_gate, self_test, sliced_task


class ACTIONPlusPlusTest(ScriptedLoadableModuleTest):
    """Phantom volumes and segmentations in the scene, a quick CPU training through the real worker,
    predictions checked for names, geometry and a Dice above chance; bad input leaves nodes untouched."""

    PRESET = "acdc"
    # small enough for a CPU in a couple of minutes, both stages included
    OVERRIDES = {
        "patch_size": [64, 64],
        "pretrain_warmup_iterations": 4,
        "pretrain_joint_iterations": 4,
        "finetune_iterations": 60,
        "pretrain_labeled_batch": 2,
        "pretrain_unlabeled_batch": 2,
        "finetune_labeled_batch": 4,
        "finetune_unlabeled_batch": 2,
        "local_window": 32,
        "local_stride": 32,
        "log_every": 5,
        "checkpoint_every": 1000,
        "amp": False,
    }

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_PanelPathWithStubWorker()  # needs no torch: runs on every build server
        # Reload & Test calls runTest directly, where a skipTest would show as an error dialog: say why
        # the training tests did not run, and return
        missing = self._missingDependencies()
        if missing:
            self.delayDisplay(_("ACTION++ training self-test not run: {why}").format(why=missing))
            logging.warning("ACTION++ training self-test not run: %s", missing)
            return
        self.setUp()
        self.test_BadInputLeavesNodesUntouched()
        self.setUp()
        self.test_TrainAndPredictPhantom()

    @staticmethod
    def _missingDependencies() -> Optional[str]:
        try:
            ACTIONPlusPlusLogic().ensureDependencies(interactive=False)
        except RuntimeError as exc:
            return str(exc)
        return None

    def _phantomScene(self, count: int):
        import numpy as np

        from ACTIONPlusPlusLib.data import phantoms
        from ACTIONPlusPlusLib.slicer_bridge.volumes import volume_node_from_case

        rng = np.random.default_rng(7)
        cases, volumes = [], []
        for index in range(count):
            case = phantoms.cardiac_phantom_case(rng, f"Phantom{index}", num_slices=4, size=(64, 64))
            cases.append(case)
            volumes.append(volume_node_from_case(slicer.mrmlScene, case, case.id))
        return cases, volumes

    def _truthSegmentation(self, case, volume):
        from ACTIONPlusPlusLib.slicer_bridge.prediction_nodes import add_prediction_to_scene

        return add_prediction_to_scene(slicer.mrmlScene, case.label, volume, self.PRESET, name=f"{case.id} truth")

    @staticmethod
    def _mtimes(nodes) -> dict:
        return {n.GetID(): n.GetMTime() for n in nodes}

    def _settings(self, outputRoot: str) -> job_options.PanelSettings:
        # "paper" = budget_iterations 0: the explicit (tiny) counts of OVERRIDES are the schedule
        return job_options.PanelSettings(
            preset=self.PRESET, budget_mode="paper", device="cpu",
            output_root=outputRoot, extra_overrides=dict(self.OVERRIDES), seed=0,
        )

    def _logicWithDependencies(self) -> "ACTIONPlusPlusLogic":
        """The logic, or a skipped test when torch & co are not installed (tests never install them)."""
        logic = ACTIONPlusPlusLogic()
        missing = self._missingDependencies()
        if missing:  # reached from a unittest runner (ctest), where a skip is shown as a skip
            self.delayDisplay(missing)
            self.skipTest(missing)
        return logic

    def _stubModel(self, outputRoot: str) -> str:
        """A model.pt the stub worker "runs": its run folder says ACDC (the preset Predict takes)."""
        run = Path(outputRoot) / "models" / "run-stub" / "run"
        run.mkdir(parents=True)
        (run / "config.json").write_text('{"preset": "acdc"}')
        (run / "model.pt").write_bytes(b"stub")
        return str(run / "model.pt")

    def _panelPrediction(self, volumes, model: str, settings) -> list:
        """What the panel does on Predict, without its widgets: the job written a volume per step (the
        panel's timer ticks), the worker's events read to the end, the results loaded a node per step."""
        from ACTIONPlusPlusLib.slicer_bridge.stub_worker import StubWorker

        gate, started = run_gate.RunGate(), []
        self.assertTrue(gate.begin("predict"))
        writing = sliced_task.SlicedTask(module_jobs.prediction_job_steps(slicer.mrmlScene, volumes, model, settings), "Writing")
        while sliced_task.tick_preparation(gate, writing, started.append, self.fail, self.fail):
            self.assertFalse(gate.controls_enabled)
        self.assertEqual(len(started), 1, writing.error)
        outcome = blocking_run.run_to_end(StubWorker(started[0]).start())
        self.assertEqual(outcome.returncode, 0, outcome.message)
        loading = sliced_task.SlicedTask(module_jobs.results_steps(slicer.mrmlScene, started[0].parent, outcome.events,
                                                                   model=model), "Loading")
        while loading.tick():
            pass
        self.assertEqual(loading.state, sliced_task.DONE, loading.error)
        return loading.result

    def test_PanelPathWithStubWorker(self) -> None:
        from ACTIONPlusPlusLib.slicer_bridge import terminology

        self.delayDisplay("The panel's path with a stub worker (no torch needed)")
        _cases, volumes = self._phantomScene(3)
        before = self._mtimes(volumes)
        outputRoot = tempfile.mkdtemp(prefix="ACTIONPlusPlusTest-")
        model = self._stubModel(outputRoot)
        settings = job_options.PanelSettings(preset="la", output_root=outputRoot, device="cpu")  # the model's preset wins
        expectedNames = [info.name for info in terminology.classes(self.PRESET)]
        for attempt in range(2):
            imports = self._panelPrediction(volumes, model, settings)
            self.assertEqual([i.volume_node for i in imports], volumes, [i.message for i in imports])
            self.assertEqual([i.updated for i in imports], [attempt == 1] * len(volumes))  # the second time: in place
            for item in imports:
                segmentation = item.segmentation_node.GetSegmentation()
                names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
                self.assertEqual(names, expectedNames)
                self.assertIs(node_selection.source_volume(slicer.mrmlScene, item.segmentation_node), item.volume_node)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), len(volumes))
        self.assertEqual(before, self._mtimes(volumes), "the user's volumes were modified")
        self.delayDisplay("Panel path test passed")

    def test_BadInputLeavesNodesUntouched(self) -> None:
        self.delayDisplay("Bad input gives a message and changes no node")
        self._logicWithDependencies()  # skipped without torch & co
        cases, volumes = self._phantomScene(2)
        truth = self._truthSegmentation(cases[0], volumes[0])
        wrong = self._truthSegmentation(cases[0], volumes[0])
        wrong.SetName("Unrelated")
        for index in range(wrong.GetSegmentation().GetNumberOfSegments()):
            segment = wrong.GetSegmentation().GetNthSegment(index)
            segment.SetName(f"Liver {index}")
            segment.SetTerminology("")
        before = self._mtimes(volumes + [truth, wrong])
        outputRoot = tempfile.mkdtemp(prefix="ACTIONPlusPlusTest-")
        settings = self._settings(outputRoot)

        bad = {
            "no labeled pair": ([], [volumes[1]]),
            "no preset segment": ([(volumes[0], wrong)], [volumes[1]]),
            "also unlabeled": ([(volumes[0], truth)], [volumes[0], volumes[1]]),
        }
        for label, (pairs, unlabeled) in bad.items():
            with self.assertRaises(Exception, msg=label) as caught:
                module_jobs.prepare_training_job(slicer.mrmlScene, pairs, unlabeled, settings)
            self.assertTrue(str(caught.exception).strip(), f"{label}: empty message")
        messages = node_selection.node_selection_problems([(volumes[0], wrong)], [], self.PRESET)
        self.assertTrue(any("Liver" in m for m in messages), messages)

        # no free disk: checked with shutil.disk_usage before anything is written
        original = shutil.disk_usage
        shutil.disk_usage = lambda path: collections.namedtuple("usage", "total used free")(100, 100, 0)
        try:
            with self.assertRaises(OSError) as caught:
                module_jobs.prepare_training_job(slicer.mrmlScene, [(volumes[0], truth)], [volumes[1]], settings)
            self.assertIn("disk", str(caught.exception))
        finally:
            shutil.disk_usage = original

        self.assertEqual(before, self._mtimes(volumes + [truth, wrong]))
        self.assertEqual([p for p in Path(outputRoot).iterdir()], [], "nothing written for rejected input")
        self.delayDisplay("Bad input test passed")

    def test_TrainAndPredictPhantom(self) -> None:
        import numpy as np

        from ACTIONPlusPlusLib.slicer_bridge import terminology
        from ACTIONPlusPlusLib.slicer_bridge.segmentations import label_from_node

        self.delayDisplay("Quick ACTION++ training on phantoms (CPU, real worker)")
        logic = self._logicWithDependencies()
        cases, volumes = self._phantomScene(5)
        truths = [self._truthSegmentation(cases[i], volumes[i]) for i in range(3)]
        pairs = list(zip(volumes[:3], truths))
        unlabeled = volumes[3:]
        before = self._mtimes(volumes + truths)

        outputRoot = tempfile.mkdtemp(prefix="ACTIONPlusPlusTest-")
        jobPath, plan = module_jobs.prepare_training_job(slicer.mrmlScene, pairs, unlabeled, self._settings(outputRoot))
        outcome = logic.runWorkerBlocking(jobPath, "cpu", timeout=1800)
        self.assertEqual(outcome.returncode, 0, f"{outcome.message}\n" + "\n".join(outcome.log[-30:]))
        self.assertTrue(outcome.tracker.model_path and os.path.isfile(outcome.tracker.model_path))
        self.assertAlmostEqual(outcome.tracker.percent, 100.0)

        imports = module_jobs.load_results(slicer.mrmlScene, jobPath.parent, outcome.events)
        self.assertEqual(len(imports), len(unlabeled), [i.message for i in imports])
        expectedNames = [info.name for info in terminology.classes(self.PRESET)]
        for item, case, volume in zip(sorted(imports, key=lambda i: i.volume_node.GetName()), cases[3:], unlabeled):
            self.assertIs(item.volume_node, volume)
            segmentation = item.segmentation_node.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
            self.assertEqual(names, expectedNames)
            # geometry: the prediction's labelmap lies on the volume's voxel grid
            labelmap = slicer.vtkOrientedImageData()
            item.segmentation_node.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(0), labelmap)
            np.testing.assert_allclose(labelmap.GetSpacing(), volume.GetSpacing(), rtol=1e-6)
            np.testing.assert_allclose(labelmap.GetOrigin(), volume.GetOrigin(), atol=1e-4)
            directions, volumeDirections = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
            labelmap.GetDirectionMatrix(directions)
            volume.GetIJKToRASDirectionMatrix(volumeDirections)
            for r in range(3):
                for c in range(3):
                    self.assertAlmostEqual(directions.GetElement(r, c), volumeDirections.GetElement(r, c), places=5)
            predicted = label_from_node(item.segmentation_node, volume, self.PRESET)
            self.assertEqual(predicted.shape, case.label.shape)
            self.assertEqual(node_selection.source_volume(slicer.mrmlScene, item.segmentation_node), volume)
            scores = [self_test.dice(predicted, case.label, info.value) for info in terminology.classes(self.PRESET)]
            chance = [self_test.chance_dice(case.label, info.value) for info in terminology.classes(self.PRESET)]
            logging.info("ACTION++ self-test %s: Dice %s, chance %s", volume.GetName(), np.round(scores, 3), np.round(chance, 3))
            self.assertGreater(float(np.mean(scores)), float(np.mean(chance)), f"Dice {scores} not above chance {chance}")

        self.assertEqual(before, self._mtimes(volumes + truths), "the user's nodes were modified")
        self.delayDisplay("Training test passed")

# plot.gp — gnuplot script for examples/plot/Makefile.
# Variables (set with -e): fmt ('png' or 'svg'), what ('convergence' or
# 'weights'), data (the .dat file made by the Makefile), out (output file).
if (fmt eq 'svg') {
	set terminal svg size 800,500 dynamic background rgb 'white'
} else {
	set terminal png size 800,500
}
set output out
set grid
if (what eq 'convergence') {
	set title 'lora-cmaes: objective per evaluation'
	set xlabel 'evaluation (id)'
	set ylabel 'objective = loss + l1 mean|w|'
	set logscale y
	set key top right
	plot data using 1:2 with points pt 7 ps 0.5 lc rgb '#9aa7b8' title 'evaluation', \
	     data using 1:3 with steps lw 2 lc rgb '#c0392b' title 'best so far'
} else {
	set title 'lora-cmaes: weights of the best evaluation'
	set ylabel 'w'
	set style data histograms
	set style fill solid 0.8 border -1
	set boxwidth 0.8
	set xtics rotate by -45 noenhanced
	set yrange [*:*]
	set xzeroaxis lt -1
	unset key
	plot data using 2:xtic(1) lc rgb '#2e86c1'
}
